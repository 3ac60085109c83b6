"""Developer tools: code generation and the bench harness. Not part of the installed package."""
