"""Korean text: the data's text conventions, Kiwi morphemes, the tokenizer guards and script diagnostics."""
