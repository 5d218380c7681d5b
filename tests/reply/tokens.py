"""Each model family's marker tokens (content -> id) as its tokenizer holds them, added tokens included."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "fixtures" / "templates"

QWEN = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657,
        "</tool_call>": 151658, "<think>": 151667, "</think>": 151668}
HERMES = {"<|begin_of_text|>": 128000, "<|im_start|>": 128002, "<|im_end|>": 128003, "<tool_call>": 128004,
          "</tool_call>": 128011}
LLAMA = {"<|begin_of_text|>": 128000, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
         "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010}
MISTRAL = {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[AVAILABLE_TOOLS]": 5, "[/AVAILABLE_TOOLS]": 6,
           "[TOOL_RESULTS]": 7, "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9, "[SYSTEM_PROMPT]": 17,
           "[/SYSTEM_PROMPT]": 18, "[TOOL_CONTENT]": 19, "[ARGS]": 32, "[CALL_ID]": 33}
HARMONY = {"<|return|>": 200002, "<|constrain|>": 200003, "<|channel|>": 200005, "<|start|>": 200006,
           "<|end|>": 200007, "<|message|>": 200008, "<|call|>": 200012}
GEMMA = {"<bos>": 2, "<|turn>": 105, "<turn|>": 106, "<|think|>": 98, "<|channel>": 100, "<channel|>": 101,
         "<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48, "<tool_call|>": 49, '<|"|>': 52}
