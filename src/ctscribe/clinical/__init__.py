"""Clinical findings: the lexicons and the parser that reads what a CT description states, shared by
prepare (the dialogue's questions) and evaluate (the findings scores)."""
