"""The wire contract: subject names, messages, the error tree, schemas, value and locale encodings."""
