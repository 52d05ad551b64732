"""Request scheduling per model: priority/EDF queue with aging, tenant fair share, admission."""
