"""Bundle signatures: who built a bundle, proven with the operator's Ed25519 key.

The manifest already pins every file of a bundle by sha256 (models, and each bank's
`bank.json`, which pins its own files), so signing the manifest's bytes signs the whole
bundle. The signature lives beside it in `manifest.sig` (JSON: algorithm, key id,
base64 signature). A key id is the first 16 hex digits of the sha256 of the raw 32-byte
public key: short enough to read in a log line, and it names the key a refusal is about.

The workstation signs (`edge-trainer keygen`, `edge-trainer bundle --sign KEY`); the daemon
verifies against the public keys its config trusts (`model.trusted_keys`,
`model.require_signature`) before it reads anything else of the bundle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_monitor.core.atomic import atomic_write_text, fsync_dir
from edge_monitor.core.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"
# Domain separation: a signature over a bundle manifest cannot be replayed as anything else.
_CONTEXT = b"edge-monitor bundle manifest v1\n"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
SIGN_FIX = "sign it on the workstation with `edge-trainer bundle --sign KEYFILE`"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the first byte on (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; a public key stays readable
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(prefix: str | Path) -> tuple[Path, Path, str]:
    """Write PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (PEM, 0644); return both
    paths and the key id. Existing files are never overwritten."""
    prefix = Path(prefix)
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; keys are never overwritten, pick a new name")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    _write_new(private_path, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ), PRIVATE_MODE)
    _write_new(public_path, public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ), PUBLIC_MODE)
    fsync_dir(prefix.parent)
    return private_path, public_path, key_id(public)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the signing key ({exc.strerror or exc})") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not an unencrypted PEM private key ({exc}); use a .key file written by "
            "`edge-trainer keygen`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key; make one with `edge-trainer keygen`")
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; `chmod 600 %s`", path, path)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the trusted public key ({exc.strerror or exc}); fix "
            "model.trusted_keys"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a PEM public key ({exc}); list the .pub files `edge-trainer keygen` "
            "wrote in model.trusted_keys"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key; model.trusted_keys takes .pub "
                          "files from `edge-trainer keygen`")
    return key


def sign_manifest(root: Path, manifest_name: str, private_key: Ed25519PrivateKey) -> str:
    """Write `manifest.sig` for the bundle at `root`; returns the key id."""
    data = (root / manifest_name).read_bytes()
    kid = key_id(private_key.public_key())
    body = {
        "algorithm": ALGORITHM,
        "key_id": kid,
        "signature": base64.b64encode(private_key.sign(_CONTEXT + data)).decode("ascii"),
    }
    atomic_write_text(root / SIGNATURE_NAME, json.dumps(body, indent=1) + "\n")
    return kid


@dataclass(frozen=True)
class Signer:
    """Who signed a verified bundle: the key id and the trusted key file's name."""

    key_id: str
    name: str


@dataclass(frozen=True)
class TrustPolicy:
    """The public keys a daemon trusts, by key id, and whether a bundle must be signed."""

    keys: dict[str, tuple[str, Ed25519PublicKey]] = field(default_factory=dict)
    require_signature: bool = False

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], require_signature: bool) -> TrustPolicy:
        keys = {}
        for path in paths:
            public = load_public_key(path)
            keys[key_id(public)] = (Path(path).stem, public)
        return cls(keys, require_signature)

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.require_signature


def _read_signature(path: Path, where: str | Path) -> tuple[str, bytes]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {body.get('algorithm')!r} is not {ALGORITHM}")
        kid = str(body["key_id"])
        signature = base64.b64decode(str(body["signature"]), validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            binascii.Error) as exc:
        raise BundleError(
            f"{where}: unreadable {SIGNATURE_NAME} ({exc}); {SIGN_FIX} again"
        ) from exc
    return kid, signature


def verify_signature(
    root: Path, manifest_name: str, policy: TrustPolicy, shown: str | Path | None = None
) -> Signer | None:
    """Check `manifest.sig` against the trusted keys; None when signing is not in use.

    Refused: an unsigned bundle when a signature is required, a signature by a key that
    is not trusted, a signature that does not match the manifest's bytes. Messages name
    `shown` (the .tar the operator gave) rather than where it was unpacked.
    """
    if not policy.enabled:
        return None
    where = shown or root
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        if policy.require_signature:
            raise BundleError(
                f"{where}: bundle is not signed and model.require_signature is true; {SIGN_FIX}"
            )
        log.warning("bundle %s is not signed (model.require_signature is false)", where)
        return None
    kid, signature = _read_signature(sig_path, where)
    if kid not in policy.keys:
        trusted = ", ".join(sorted(policy.keys)) or "none"
        raise BundleError(
            f"{where}: signed by key id {kid}, which this box does not trust (trusted: "
            f"{trusted}); add that key's .pub file to model.trusted_keys or sign with a "
            "trusted key"
        )
    name, public = policy.keys[kid]
    try:
        public.verify(signature, _CONTEXT + (root / manifest_name).read_bytes())
    except InvalidSignature:
        raise BundleError(
            f"{where}: the signature of key id {kid} does not match {manifest_name}: the bundle "
            f"was modified after signing; rebuild it and {SIGN_FIX}"
        ) from None
    return Signer(kid, name)
