"""Test support for the deployer: an EC2 driver that works with moto, and helpers.

Apache Libcloud 3.9 and moto 5.2 disagree in two places the deployer uses (the XML
namespace is fixed in ``tests.servers``):

* libcloud numbers ``CreateTags`` parameters from 0 (``ResourceId.0``, ``Tag.0.Key``);
  moto reads them from 1 and answers with an error;
* moto refuses a ``DetachVolume`` that names no ``InstanceId``, which libcloud leaves out.

``MotoEC2NodeDriver`` sends both the way moto (and EC2's documentation) expect, and is
registered as the ``ec2`` provider for the tests.
"""

from __future__ import annotations

import uuid
from typing import Any

from libcloud.compute.drivers.ec2 import EC2NodeDriver

from deployer import clouds


class MotoEC2NodeDriver(EC2NodeDriver):  # type: ignore[misc]
    def ex_create_tags(self, resource: Any, tags: dict[str, str]) -> bool:
        params: dict[str, Any] = {"Action": "CreateTags", "ResourceId.1": resource.id}
        for n, (key, value) in enumerate(tags.items(), start=1):
            params[f"Tag.{n}.Key"] = key
            params[f"Tag.{n}.Value"] = value
        self.connection.request(self.path, params=params)
        return True

    def detach_volume(self, volume: Any, ex_force: bool = False) -> bool:
        params: dict[str, Any] = {"Action": "DetachVolume", "VolumeId": volume.id}
        instance_id = (volume.extra or {}).get("instance_id")
        if instance_id:
            params["InstanceId"] = instance_id
        if ex_force:
            params["Force"] = 1
        self.connection.request(self.path, params=params)
        return True


def use_moto_driver() -> None:
    clouds.register_driver("ec2", MotoEC2NodeDriver)


def requested_payload(
    *,
    subscription_id: uuid.UUID,
    marketplace_id: uuid.UUID,
    customer_id: uuid.UUID,
    product_id: uuid.UUID,
    vendor_id: uuid.UUID,
    target: dict[str, Any],
    product_type: str = "vm_app",
    ssh_public_key: str | None = None,
) -> dict[str, Any]:
    """A ``deployment.requested`` payload as orders emits it."""
    return {
        "subscription_id": str(subscription_id),
        "marketplace_id": str(marketplace_id),
        "customer_id": str(customer_id),
        "product_id": str(product_id),
        "vendor_id": str(vendor_id),
        "product_type": product_type,
        "target": target,
        "ssh_public_key": ssh_public_key,
    }
