"""Discord through py-cord 2.8.1 (`[voice]`, DAVE via davey, libopus).

The only asyncio code in VoxBridge lives in this package (trio runs as a guest on py-cord's loop):
- `bridge.py`: awaiting asyncio from trio and trio from asyncio, cancellation both ways;
- `receive.py`: VoxBridge's own voice receive (decrypt, DAVE, Opus per SSRC) on py-cord's socket;
- `compat.py`: every workaround for py-cord 2.8.1's voice code, in one place;
- `voice.py`: `VoxApp`: joining, hearing members, speaking answers, following voice states;
- `commands.py`: the slash commands; `adapter.py`: the bot, its wiring, `voxbridge run`.
"""
