"""The operator dashboard's templates and static files (served by ``server.api.pages``).

No build step and no CDN: the shells are Jinja2 templates, the behaviour is plain ES
modules in ``static/`` (charts are inline SVG drawn by ``static/charts.js``).
"""

from pathlib import Path

WEB_DIR = Path(__file__).parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
