"""The States API: state records in ``statek_states`` and their history."""
