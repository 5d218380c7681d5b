"""Chat templates (loading/chat_template.py) and chats with tools, tool calls, reasoning and template arguments
turned into template inputs (service/chat_inputs.py, service/chat.py): against transformers' renderings of seven
Hub templates, bad input, the special-token guard, and over gRPC."""
