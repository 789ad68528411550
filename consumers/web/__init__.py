"""The dashboard in a browser: textual-serve runs one `consumers.tui` per tab (`python -m consumers.web`)."""
