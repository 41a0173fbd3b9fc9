"""`kind = "sftp"`: the section of the configuration and the factory.

The client (`client.py`) imports paramiko: it is loaded only when a destination of this kind
is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rorfeed.sections import DestinationCommon, ReadableFile

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.transports.base import Transport


class SftpDestinationSection(DestinationCommon):
    kind: Literal["sftp"] = Field(description="kind of destination", examples=["sftp"])
    host: str = Field(description="SFTP server", examples=["sftp.example.org"])
    port: int = Field(22, ge=1, le=65535, description="SSH port")
    username: str = Field(description="account on the server", examples=["etab750712184"])
    private_key: ReadableFile = Field(
        description="private key (ed25519 or RSA)", examples=["/etc/rorfeed/id_ed25519"]
    )
    passphrase_file: str = Field("", description="file holding the key's passphrase")
    passphrase_env: str = Field("", description="or: environment variable holding it")
    known_hosts: ReadableFile = Field(
        description="the server's host key, as published by the operator",
        examples=["/etc/rorfeed/known_hosts"],
    )
    remote_dir: str = Field(description="remote folder", examples=["/depot/ror"])


def open_transport(config: Config, index: int) -> Transport:
    from rorfeed.transports.sftp.client import build

    return build(config, index)
