"""Operations: the embedded nats-server and running the whole mesh (``statek-bus up``)."""
