"""The trio core: channels, speakers, turns, playback. No asyncio here, ever."""
