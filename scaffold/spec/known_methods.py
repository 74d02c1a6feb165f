"""Method names PEFT 0.21.2 already ships (lowercased `PeftType` members).

A static list so that validating a spec never imports peft. The registrar checks the actual target tree too,
which catches methods added after this list was written.
"""

PEFT_METHODS = frozenset(
    {
        "adalora", "adamss", "adaption_prompt", "beft", "boft", "c3a", "cartridge", "cpt", "deft", "delora",
        "fourierft", "frod", "glora", "gralora", "hira", "hra", "ia3", "lily", "ln_tuning", "loha", "lokr", "lora",
        "miss", "multitask_prompt_tuning", "oft", "osf", "p_tuning", "peanut", "poly", "prefix_tuning",
        "prompt_tuning", "psoft", "pvera", "randlora", "road", "shadow", "shira", "supertuning", "tinylora",
        "trainable_tokens", "unilora", "vblora", "vera", "waveft", "xlora",
    }
)  # fmt: skip
