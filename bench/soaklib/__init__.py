"""The soak's parts (bench/soak.py): processes, clients, plans, sessions, invariants."""
