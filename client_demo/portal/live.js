// Live updates for the portal page: new messages appear without a reload, and what the
// patient sees on screen is marked read (the team's "patient viewed" mark). The page
// works without this script; it only adds to it.
const list = document.getElementById('messages');
const RETRY_MS = 5000;

function timeText(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: 'short', day: '2-digit', hour: '2-digit',
                                       minute: '2-digit' });
}

function sizeText(size) {
  return size >= 1048576 ? `${(size / 1048576).toFixed(1)} MB`
    : `${Math.max(1, Math.floor(size / 1024))} KB`;
}

// The same markup as the server-rendered page's file list.
function fileList(files) {
  const list = document.createElement('ul');
  list.className = 'files';
  list.setAttribute('aria-label', 'Files');
  for (const file of files) {
    const item = document.createElement('li');
    const link = document.createElement('a');
    link.href = `/api/v1/files/${encodeURIComponent(file.id)}`;
    link.download = '';
    link.textContent = file.name;
    const size = document.createElement('span');
    size.className = 'size';
    size.textContent = ` (${sizeText(file.size)})`;
    item.append(link, size);
    list.append(item);
  }
  return list;
}

function addMessage(event) {
  if (!list || list.querySelector(`[data-seq="${event.seq}"]`)) return;
  const empty = list.querySelector('.empty');
  if (empty) empty.remove();
  const mine = event.sender && event.sender.kind === 'patient';
  const item = document.createElement('li');
  item.className = mine ? 'message mine' : 'message';
  item.dataset.seq = String(event.seq);
  const meta = document.createElement('p');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = mine ? 'You' : (event.sender ? event.sender.name : '');
  const when = document.createElement('time');
  when.dateTime = event.created_at;
  when.textContent = ` ${timeText(event.created_at)}`;
  meta.append(who, when);
  const body = document.createElement('p');
  body.className = 'body';
  if (event.recalled) {
    const em = document.createElement('em');
    em.textContent = 'This message was recalled by its sender.';
    body.append(em);
  } else {
    body.textContent = event.body || '';
  }
  item.append(meta, body);
  const files = event.recalled ? [] : (event.attachments || []).filter((a) => a.id);
  if (files.length) item.append(fileList(files));
  list.append(item);
  item.scrollIntoView({ block: 'end' });
}

async function connect() {
  const answer = await fetch('/portal/ws-ticket', { method: 'POST', credentials: 'same-origin' });
  if (!answer.ok) return; // the session ended: the page itself still works
  const { ticket, conversation_id: conversationId } = await answer.json();
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/ws`, 'bloomtext.v1.json');
  let lastSeq = Number(list ? list.dataset.lastSeq : 0) || 0;
  ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', ticket })));
  ws.addEventListener('message', (m) => {
    const frame = JSON.parse(m.data);
    if (frame.type === 'ready') {
      ws.send(JSON.stringify({ type: 'sync', since: { [conversationId]: lastSeq } }));
    } else if (frame.type === 'event' && frame.event.conversation_id === conversationId) {
      const event = frame.event;
      if (event.kind === 'message') addMessage(event);
      lastSeq = Math.max(lastSeq, event.seq);
      if (document.visibilityState === 'visible') {
        ws.send(JSON.stringify({ type: 'read', conversation_id: conversationId, seq: lastSeq }));
      }
    }
  });
  ws.addEventListener('close', (e) => {
    if (e.code !== 4001) setTimeout(() => connect().catch(() => {}), RETRY_MS);
  });
}

connect().catch(() => {});
