"""Gemma's chat turns as a Jinja template: the tiny tokenizers' template and the fallback for
tokenizers without one (chat, ShareGPT rendering)."""

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set sys = '' %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}"
    "{% endif %}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (sys if loop.first else '') + m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
