"""The local simulation of a voice channel (no Discord token): `voxbridge simulate`."""
