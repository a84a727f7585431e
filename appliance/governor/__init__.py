"""The resource governor (paladin-governor.service): steps the model down and up on CPU, memory and heat."""
