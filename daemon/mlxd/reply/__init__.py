"""A model's reply, parsed as it streams into reasoning, answer text and tool calls (issue 18), and the grammar
that forces a tool call in the model's own format. Pure Python: no MLX, no gRPC.

formats.py chooses the format from the chat template and the tokenizer; scanner.py holds back marker fragments
for every format's parser (tagged.py, mistral.py, llama3.py, harmony.py, gemma4.py); tool_grammar.py writes the
forced-call grammars for llguidance.
"""

from mlxd.reply.formats import FORMAT_NAMES, ReplyFormat, reply_format
from mlxd.reply.parsed import Parsed, ParsedToolCall, ReplyParser

__all__ = ["FORMAT_NAMES", "Parsed", "ParsedToolCall", "ReplyFormat", "ReplyParser", "reply_format"]
