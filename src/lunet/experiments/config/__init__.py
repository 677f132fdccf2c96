"""Configuration: errors, optimisation settings, named presets and recipes, model specs and the
memory a model needs. The lowest layer of the experiment side: it imports only the library."""
