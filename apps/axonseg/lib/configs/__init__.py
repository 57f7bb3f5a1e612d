"""One module per structure; each defines SPEC (what the model is) and its TaskConfig."""
