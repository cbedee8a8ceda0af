"""`unmask serve`: a local web page for live runs, fill-mask, the masking walkthrough and comparisons.

- `runs`: finding the runs under the given folders and reading them while they train;
- `app`: the ASGI app (Starlette, served by uvicorn) and its JSON API;
- `walkthrough`: one masking draw with the model's predictions at the picked positions;
- `static/`: the page itself (HTML, CSS and JavaScript with hand-drawn SVG charts; no CDN).
"""
