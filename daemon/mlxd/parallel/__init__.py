"""Tensor parallelism across processes (issue 22): rank 0 serves and replays its runner's calls on the other
ranks (replication.py, follower.py) over a side channel (channel.py); the ranks are started and joined by
launch.py, and their mx.distributed group by group.py."""
