"""The control API (`control.py`: routes, auth, validation) and its trio HTTP server (`server.py`: hypercorn)."""
