"""The query router's label tokens, importable without torch (the parameter parser and the
prompt builders read them at start-up)."""

LABEL_TOKENS = ("[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]")  # score s is LABEL_TOKENS[s - 1]
GOOD_ENOUGH = 4  # a predicted score >= 4: the cheap model's answer is good enough
