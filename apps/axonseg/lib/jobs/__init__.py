"""GPU work on a Redis queue (RQ): request → job → worker → result.

- ``queues``: queue names and which job kind goes where.
- ``client``: the API side: submit, wait, cancel, inspect.
- ``tasks``: the job functions a worker runs, with the worker's warm models.
- ``worker``: the worker process.
- ``embedded``: ``make serve``'s launcher: embedded Redis, workers, then the MONAI Label server.
"""
