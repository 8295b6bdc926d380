"""The wire contract: subject names, messages, the error tree, schemas, the provider-config shape, value and locale encodings."""
