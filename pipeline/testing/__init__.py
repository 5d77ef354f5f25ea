"""A fake OpenAI-compatible endpoint (`fake_server.py`): `--endpoint fake`, the
benches and the tests use it; no key, no network."""
