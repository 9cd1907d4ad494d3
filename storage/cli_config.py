"""Config for tortoise's own CLI: `tortoise -c storage.cli_config.TORTOISE_ORM makemigrations`.

It reads DATABASE_URL like the server does; the server itself never imports this module.
"""

import os

from storage.db import tortoise_config

TORTOISE_ORM = tortoise_config(os.environ.get("DATABASE_URL") or "sqlite://data/bloomtext.sqlite3")
