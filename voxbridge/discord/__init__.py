"""Discord through py-cord 2.8.1 (`[voice]`, DAVE via davey, libopus).

- `adapter.py`: the only asyncio code in VoxBridge: trio runs as a guest on py-cord's asyncio
  loop; bridge helpers, the bot, the slash commands, `voxbridge run`.
- `compat.py`: the receive/playback compatibility layer for py-cord's threads (no asyncio), kept
  in one place so a fixed py-cord can replace it.
"""
