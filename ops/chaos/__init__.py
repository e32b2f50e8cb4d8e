"""Chaos for the cloud flow: bad and redelivered up-tunnel traffic, worker kills, and the checks after.

Three parts, usable on their own (`inputs`, `noise`, `run` with its checks in `oracle`; `cloudrun`
is the plain cloud-only replay the run builds on):

- **Bad input** (pure): `bad_message` turns a valid envelope into one invalid up-tunnel message
  (truncated, wrong types, wrong versions, huge lists, NaN/inf, missing fields, random bytes,
  oversize, ...). The schema decoder is the oracle: every message it returns fails
  `decode` and `expected_reason` says which dead-letter reason ingest must give.
- **Redelivery noise** (valid, must change nothing): exact and shuffled duplicates of
  envelopes, late duplicates of earlier days, the same events reported by an unknown device,
  redelivered pull requests and pulls of unknown devices.
- **The run**: `ChaosRun` replays day plans through real worker processes with the day
  barrier, mixes the above into the traffic, can SIGKILL a worker in the middle of a stage and
  restart it, and keeps a `Ledger` of everything it injected so counts can be reconciled
  exactly. `expected_state` computes what the vectors must be from the agents' own pure steps.
"""
