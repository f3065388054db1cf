"""Signed bundles: keygen file modes, a signed bundle loads, and unsigned, tampered or
untrusted ones are refused in one line naming the key id and the fix (also by `check`)."""

from __future__ import annotations

import shutil
import stat

import pytest
import yaml
from daemon_support import small_config, write_config
from fleet_support import make_bundle

from edge_monitor import cli
from edge_monitor.config.loader import load_config
from edge_monitor.core.bundle import MANIFEST_NAME, load_bundle
from edge_monitor.core.errors import BundleError, ConfigError
from edge_monitor.core.signing import (
    SIGNATURE_NAME,
    TrustPolicy,
    generate_keypair,
    key_id,
    load_private_key,
)
from trainer import cli as trainer_cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    ops = generate_keypair(root / "ops")
    rogue = generate_keypair(root / "rogue")
    return ops, rogue


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    (ops_key, _, _), _ = keys
    return make_bundle(tmp_path_factory.mktemp("signed"), "v1", 0, load_private_key(ops_key))


def policy(*pubs, require=True):
    return TrustPolicy.from_files(pubs, require)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    assert trainer_cli.main(["keygen", "--out", str(tmp_path / "k" / "ops")]) == 0
    out = capsys.readouterr().out
    private, public = tmp_path / "k" / "ops.key", tmp_path / "k" / "ops.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert f"key id {key_id(load_private_key(private).public_key())}" in out
    # A second keygen never overwrites the first key.
    assert trainer_cli.main(["keygen", "--out", str(tmp_path / "k" / "ops")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_signed_bundle_loads_with_its_signer(keys, signed):
    (_, ops_pub, ops_id), (_, rogue_pub, _) = keys
    bundle = load_bundle(signed[1], trust=policy(ops_pub, rogue_pub))
    assert bundle.signer is not None
    assert (bundle.signer.key_id, bundle.signer.name) == (ops_id, "ops")


def test_unsigned_bundle_is_refused_when_a_signature_is_required(tmp_path, keys):
    (_, ops_pub, _), _ = keys
    _, tar = make_bundle(tmp_path, "plain", 0)
    with pytest.raises(BundleError) as err:
        load_bundle(tar, trust=policy(ops_pub))
    message = str(err.value)
    assert f"{tar}: bundle is not signed and model.require_signature is true" in message
    assert "edge-trainer bundle --sign KEYFILE" in message and "\n" not in message
    # Not required: an unsigned bundle still loads (signing can be introduced box by box).
    assert load_bundle(tar, trust=policy(ops_pub, require=False)).signer is None


def test_tampered_manifest_is_refused_naming_the_key(tmp_path, keys, signed):
    (_, ops_pub, ops_id), _ = keys
    copy = tmp_path / "copy"
    shutil.copytree(signed[0], copy)
    manifest = yaml.safe_load((copy / MANIFEST_NAME).read_text())
    manifest["machines"]["fan"]["threshold"] *= 10  # fewer alarms: the kind of edit to catch
    (copy / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    with pytest.raises(BundleError, match=f"signature of key id {ops_id} does not match"):
        load_bundle(copy, trust=policy(ops_pub))


def test_bundle_of_an_untrusted_key_is_refused(keys, signed):
    (_, _, ops_id), (_, rogue_pub, rogue_id) = keys
    with pytest.raises(BundleError) as err:
        load_bundle(signed[1], trust=policy(rogue_pub, require=False))
    message = str(err.value)
    assert f"signed by key id {ops_id}, which this box does not trust (trusted: {rogue_id})" \
        in message
    assert "add that key's .pub file to model.trusted_keys" in message


def test_garbled_signature_file_is_refused(tmp_path, keys, signed):
    (_, ops_pub, _), _ = keys
    copy = tmp_path / "copy"
    shutil.copytree(signed[0], copy)
    (copy / SIGNATURE_NAME).write_text("{not json")
    with pytest.raises(BundleError, match=f"unreadable {SIGNATURE_NAME}"):
        load_bundle(copy, trust=policy(ops_pub))


def test_check_refuses_what_run_would_refuse(tmp_path, keys, signed, capsys):
    (_, ops_pub, ops_id), (_, rogue_pub, _) = keys
    config = small_config(tmp_path, None, source={"kind": "sounddevice"},
                          model={"bundle": str(signed[1]), "trusted_keys": [str(ops_pub)],
                                 "require_signature": True},
                          machines=[{"name": "fan"}], windows={"window_s": None, "hop_s": 0.5})
    assert cli.main(["check", "-c", str(write_config(tmp_path, config))]) == 0
    assert f"signed by ops (key id {ops_id})" in capsys.readouterr().out
    config["model"]["trusted_keys"] = [str(rogue_pub)]
    assert cli.main(["check", "-c", str(write_config(tmp_path, config))]) == 2
    err = capsys.readouterr().err
    assert f"signed by key id {ops_id}, which this box does not trust" in err
    assert len(err.strip().splitlines()) == 1


def test_require_signature_needs_trusted_keys(tmp_path):
    config = small_config(tmp_path, None, source={"kind": "sounddevice"},
                          model={"require_signature": True})
    with pytest.raises(ConfigError, match=r"model\.trusted_keys is empty"):
        load_config(write_config(tmp_path, config))
    config["model"] = {"trusted_keys": ["missing.pub"]}
    with pytest.raises(ConfigError, match=r"model\.trusted_keys\.0 = .*no such file"):
        load_config(write_config(tmp_path, config))
