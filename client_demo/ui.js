// DOM helpers shared by app.js and the views it splits into (inbox, conversation, session):
// by id, text, visibility, and the one toast they all report through.

export const $ = (id) => document.getElementById(id);

export function setText(node, text) {
  node.textContent = text;
}

export function show(node, visible) {
  node.hidden = !visible;
}

let toastTimer = null;
export function toast(message) {
  const node = $('toast');
  setText(node, message);
  show(node, true);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(node, false), 6000);
}
