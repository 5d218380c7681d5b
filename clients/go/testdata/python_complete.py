"""The Python client's whole generation for a request, as JSON: the reference the Go runner is compared to.

Usage: python python_complete.py ADDR '{"tokens": [...], "max_tokens": 16, "temperature": 0}'
"""

import json
import sys

from mlxd_client import Client

addr, request = sys.argv[1], json.loads(sys.argv[2])
with Client(addr) as client:
    completion = client.complete(**request)
print(json.dumps({"text": completion.text, "token_ids": completion.token_ids,
                  "finish_reason": completion.final.finish_reason,
                  "completion_tokens": completion.final.usage.completion_tokens}))
