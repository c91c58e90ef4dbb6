"""Creating a node: the data directory, its keys, its database and its first key-history entries.

Owns what ``citynode init`` does, so that tests provision nodes exactly the same way. Invariant:
an existing node is never overwritten (the keystore refuses to be created twice).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node.config import NodeConfig
from node.keystore import PRODUCTION_KDF, KdfParams, Keystore
from node.secrets_source import OperatorSecret
from node.service import Node
from protocol.keys import fingerprint


async def create_node(
    config: NodeConfig,
    secret: OperatorSecret,
    *,
    kdf_params: KdfParams = PRODUCTION_KDF,
    clock: Callable[[], float] = time.time,
) -> str:
    """Create the node described by ``config``.

    Args:
        config: the node's configuration (its data directory must not hold a node yet).
        secret: the operator secret that will unlock the keystore.
        kdf_params: Argon2id cost (tests pass cheaper ones).
        clock: Unix seconds now.

    Returns:
        The node's numeric fingerprint, for the operators to compare.

    Raises:
        KeystoreExists: a node already lives in the data directory.
        StorageError: the database cannot be created.
    """
    keystore = Keystore.create(config.data_dir, secret, kdf_params, clock=clock)
    keystore.generate_identity()
    keystore.generate_encryption()
    keystore.generate_encryption()
    keystore.generate_tls(config.city)
    keystore.generate_data_key()
    node = await Node.open(config, secret, clock=clock)
    try:
        await node.record_initial_keys()
    finally:
        await node.close()
    return fingerprint(config.city, node.own.identity_stored.public_key)
