"""The Hugging Face Hub-compatible API: an adapter over repos/ and storage/ (see protocols/hf-hub.md)."""
