"""State in SQL through SQLAlchemy 2: images, label versions, leases, scores, training runs, model versions."""
