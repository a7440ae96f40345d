"""The demo catalog: a dozen products from four vendors, with generated logos, plans of
every pricing model, and a few reviews. Loaded by :mod:`cmw.demo`."""

# ruff: noqa: E501 - the product texts below read better on one line each

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy.orm import Session

from cassetto import Storage
from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, OrganisationKind, User
from cmw.assets.service import save_image
from cmw.catalog import service as catalog
from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel, Product, ProductType, Review
from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
from cmw.marketplaces.models import Marketplace

D = Decimal


def _flat(price: str, label: str = "Monthly fee") -> ComponentSpec:
    return ComponentSpec(kind=ComponentKind.FLAT, label=label, unit_price=D(price))


def _setup(price: str) -> ComponentSpec:
    return ComponentSpec(kind=ComponentKind.SETUP, label="One-off setup", unit_price=D(price))


def _seats(price: str, minimum: int = 1, unit: str = "user") -> ComponentSpec:
    return ComponentSpec(
        kind=ComponentKind.PER_UNIT,
        label=f"Price per {unit}",
        unit_price=D(price),
        unit=unit,
        min_quantity=minimum,
    )


def _metered(
    metric: str,
    unit: str,
    model: PricingModel,
    *,
    price: str | None = None,
    included: str = "0",
    tiers: tuple[tuple[str, str | None, str], ...] = (),
) -> ComponentSpec:
    return ComponentSpec(
        kind=ComponentKind.METERED,
        label=metric.split(".")[0].replace("_", " ").capitalize(),
        metric=metric,
        unit=unit,
        pricing_model=model,
        unit_price=D(price) if price is not None else None,
        included_quantity=D(included),
        tiers=tuple(Tier(D(a), D(b) if b else None, D(p)) for a, b, p in tiers),
    )


def _plan(
    code: str,
    name: str,
    *components: ComponentSpec,
    period: BillingPeriod = BillingPeriod.MONTH,
    currency: str = "EUR",
) -> PlanSpec:
    return PlanSpec(code=code, name=name, currency=currency, billing_period=period, components=components)


def _target(
    product_type: ProductType, cores: int, ram_gib: int, ports: list[int], data_gib: int = 50
) -> dict[str, Any]:
    """A deployment on the demo's cloud, Libcloud's dummy driver: its images are "1" to
    "3" and its largest size has 8 GiB of RAM, so the products ask for no more."""
    app = product_type is ProductType.VM_APP
    return {
        "cloud_account": "demo-cloud",
        "region": "eu-central",
        "image": "1",
        "size": {"cores": cores, "ram_mib": ram_gib * 1024, "root_disk_gib": 20},
        "data_disk_gib": data_gib if app else None,
        "inbound_ports": [{"port": p, "protocol": "tcp", "cidr": "0.0.0.0/0"} for p in ports],
        "setup_script": "#!/bin/sh\nset -e\n/opt/vendor/install.sh --data /data\n" if app else None,
        "app_url_template": "https://{ip}/" if app else None,
        "default_login": "admin" if app else None,
    }


GRADUATED_TRAFFIC = (("0", "1000", "0.08"), ("1000", "10000", "0.05"), ("10000", None, "0.03"))
VOLUME_STORAGE = (("0", "1024", "0.025"), ("1024", "10240", "0.02"), ("10240", None, "0.015"))

#: vendor, slug, name, category, type, trial days, colour, short, long, tags, size, plans
PRODUCTS: list[tuple[Any, ...]] = [
    (
        "AcmeSoft",
        "pgvault",
        "PGVault",
        "databases",
        ProductType.VM_APP,
        14,
        (37, 99, 235),
        "Managed PostgreSQL with point-in-time recovery.",
        "PGVault runs **PostgreSQL 16** tuned for your VM, with WAL archiving, nightly base backups and "
        "point-in-time recovery.\n\n- streaming replica on demand\n- pgBouncer included\n- metrics out of the box",
        ["postgresql", "backup", "sql"],
        (2, 8, [5432, 443]),
        [
            _plan(
                "standard",
                "Standard",
                _flat("39"),
                _metered("storage.gb_month", "GB-month", PricingModel.PER_UNIT, price="0.12", included="50"),
            ),
            _plan(
                "business",
                "Business",
                _flat("119"),
                _setup("150"),
                _metered("storage.gb_month", "GB-month", PricingModel.VOLUME, tiers=VOLUME_STORAGE),
            ),
        ],
    ),
    (
        "AcmeSoft",
        "forge-ci",
        "Forge CI",
        "devops",
        ProductType.VM_APP,
        30,
        (220, 38, 38),
        "Self-hosted CI/CD runners for your Git repositories.",
        "Run pipelines on your own cloud: **Forge CI** gives you autoscaling runners, caches and artefacts.",
        ["ci", "pipeline", "git"],
        (4, 8, [443]),
        [
            _plan(
                "team",
                "Team",
                _seats("8", minimum=5),
                _metered(
                    "build.minutes",
                    "minute",
                    PricingModel.GRADUATED,
                    included="2000",
                    tiers=(("0", "10000", "0.004"), ("10000", None, "0.003")),
                ),
            )
        ],
    ),
    (
        "AcmeSoft",
        "wireguard-gateway",
        "Tunnel Gateway",
        "networking",
        ProductType.BARE_VM,
        0,
        (16, 185, 129),
        "A WireGuard VPN gateway VM, sized for your team.",
        "A minimal VM image with **WireGuard** preinstalled. Bring your own peers.",
        ["vpn", "wireguard"],
        (1, 1, [51820, 22]),
        [
            _plan("small", "Small", _flat("9")),
            _plan("yearly", "Small, yearly", _flat("90"), period=BillingPeriod.YEAR),
        ],
    ),
    (
        "DataForge",
        "lens-analytics",
        "Lens Analytics",
        "analytics",
        ProductType.VM_APP,
        14,
        (245, 158, 11),
        "Dashboards and questions over your databases, no SQL needed.",
        "Connect your databases and ask questions. **Lens** builds the charts.",
        ["dashboard", "bi", "sql"],
        (2, 4, [443]),
        [
            _plan("starter", "Starter", _flat("29")),
            _plan("pro", "Pro", _flat("99"), _seats("6", unit="editor")),
        ],
    ),
    (
        "DataForge",
        "quarry-etl",
        "Quarry ETL",
        "analytics",
        ProductType.VM_APP,
        0,
        (124, 58, 237),
        "Pipelines that move data from SaaS tools into your warehouse.",
        "Quarry syncs 150 sources into PostgreSQL or your warehouse on a schedule.",
        ["pipeline", "etl"],
        (4, 8, [443]),
        [
            _plan(
                "usage",
                "Pay as you go",
                _metered(
                    "rows.million",
                    "million rows",
                    PricingModel.GRADUATED,
                    tiers=(("0", "10", "4"), ("10", "100", "2.5"), ("100", None, "1.5")),
                ),
            )
        ],
    ),
    (
        "DataForge",
        "vector-lab",
        "Vector Lab",
        "ai",
        ProductType.VM_APP,
        7,
        (236, 72, 153),
        "A GPU notebook server for machine learning teams.",
        "Jupyter notebooks on a GPU VM, with shared environments and scheduled jobs.",
        ["gpu", "jupyter", "ml"],
        (8, 8, [443]),
        [
            _plan(
                "gpu",
                "GPU hours",
                _flat("15", "Base fee"),
                _metered("gpu.hours", "GPU-hour", PricingModel.PER_UNIT, price="1.35"),
            )
        ],
    ),
    (
        "Nimbus Labs",
        "hive-files",
        "Hive Files",
        "collaboration",
        ProductType.VM_APP,
        30,
        (14, 165, 233),
        "File sync, calendars and office documents for your company.",
        "Everything your team shares, on your own VM: files, calendars, contacts and online office.",
        ["files", "office", "sync"],
        (2, 8, [443]),
        [
            _plan("business", "Business", _seats("4.90", minimum=10)),
            _plan("business-yearly", "Business, yearly", _seats("49", minimum=10), period=BillingPeriod.YEAR),
        ],
    ),
    (
        "Nimbus Labs",
        "pressroom",
        "Pressroom",
        "web",
        ProductType.VM_APP,
        14,
        (71, 85, 105),
        "A fast WordPress stack with caching and staging sites.",
        "WordPress on Nginx with full-page caching, a staging copy and daily backups.",
        ["wordpress", "cms", "backup"],
        (2, 4, [80, 443]),
        [
            _plan(
                "site",
                "One site",
                _flat("19"),
                _metered(
                    "bandwidth.gb", "GB", PricingModel.GRADUATED, included="100", tiers=GRADUATED_TRAFFIC
                ),
            )
        ],
    ),
    (
        "Nimbus Labs",
        "watchtower",
        "Watchtower",
        "monitoring",
        ProductType.VM_APP,
        14,
        (234, 88, 12),
        "Metrics, logs and alerts for your servers.",
        "Prometheus-compatible metrics, log search and alerting rules you can edit.",
        ["metrics", "alerts", "dashboard"],
        (2, 8, [443]),
        [
            _plan(
                "observe",
                "Observe",
                _flat("25"),
                _metered(
                    "metrics.series_thousand",
                    "thousand series",
                    PricingModel.VOLUME,
                    tiers=(("0", "100", "0.9"), ("100", None, "0.6")),
                ),
            )
        ],
    ),
    (
        "Cobalt Security",
        "keyring",
        "Keyring",
        "security",
        ProductType.VM_APP,
        30,
        (30, 64, 175),
        "A password manager your team hosts itself.",
        "End-to-end encrypted vaults, sharing, and single sign-on.",
        ["passwords", "sso"],
        (1, 2, [443]),
        [_plan("team", "Team", _seats("3", minimum=5))],
    ),
    (
        "Cobalt Security",
        "bastion",
        "Bastion",
        "security",
        ProductType.BARE_VM,
        0,
        (100, 116, 139),
        "A hardened jump host for SSH access to your fleet.",
        "A locked-down Debian image: SSH only, audit logging, fail2ban.",
        ["ssh", "audit"],
        (1, 1, [22]),
        [_plan("host", "Per host", _flat("7"))],
    ),
    (
        "Cobalt Security",
        "coldstore",
        "Coldstore",
        "storage",
        ProductType.VM_APP,
        14,
        (5, 150, 105),
        "S3-compatible object storage on your own disks.",
        "An S3 API for backups and artefacts, with versioning and lifecycle rules.",
        ["s3", "backup", "storage"],
        (2, 4, [443, 9000]),
        [
            _plan(
                "capacity",
                "By capacity",
                _setup("49"),
                _metered("storage.gb_month", "GB-month", PricingModel.VOLUME, tiers=VOLUME_STORAGE),
            )
        ],
    ),
]

REVIEWS = [
    ("Globex", "pgvault", 5, "Point-in-time recovery saved us during a bad migration."),
    ("Initech", "pgvault", 4, "Solid; the replica setup took a ticket to support."),
    ("Globex", "lens-analytics", 4, "Our sales team builds its own dashboards now."),
    ("Initech", "hive-files", 5, "Replaced three SaaS tools."),
    ("Globex", "pressroom", 3, "Fast, but the staging copy is a manual step."),
    ("Initech", "keyring", 5, "Rolled out to 40 people in an afternoon."),
]


def logo_png(colour: tuple[int, int, int], seed: int) -> bytes:
    """A simple geometric logo on a transparent background."""
    size = 512
    image = PILImage.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    shape = seed % 3
    if shape == 0:
        draw.ellipse((64, 64, 448, 448), fill=(*colour, 255))
        draw.ellipse((176, 176, 336, 336), fill=(255, 255, 255, 255))
    elif shape == 1:
        draw.rounded_rectangle((80, 80, 432, 432), radius=72, fill=(*colour, 255))
        draw.polygon([(256, 150), (370, 360), (142, 360)], fill=(255, 255, 255, 255))
    else:
        draw.polygon([(256, 48), (464, 256), (256, 464), (48, 256)], fill=(*colour, 255))
        draw.rectangle((216, 160, 296, 352), fill=(255, 255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def load(session: Session, storage: Storage, marketplace: Marketplace, admin: User) -> bool:
    """Create the demo catalog unless a demo product exists; True if it was created."""
    if session.scalar(
        sa.select(Product.id).where(Product.slug == PRODUCTS[0][1], Product.marketplace_id == marketplace.id)
    ):
        return False
    vendors: dict[str, Organisation] = {
        o.name: o
        for o in session.scalars(
            sa.select(Organisation).where(
                Organisation.marketplace_id == marketplace.id, Organisation.kind == OrganisationKind.VENDOR
            )
        )
    }
    for index, (
        vendor_name,
        slug,
        name,
        category,
        product_type,
        trial,
        colour,
        short,
        long,
        tags,
        size,
        plans,
    ) in enumerate(PRODUCTS):
        vendor = vendors.get(vendor_name)
        if vendor is None:
            vendor = accounts.create_organisation(
                session,
                marketplace,
                kind=OrganisationKind.VENDOR,
                name=vendor_name,
                billing=accounts.BillingDetails(
                    legal_name=f"{vendor_name} Ltd", country="IE", address_line1="2 Demo Quay", city="Dublin"
                ),
            )
            vendors[vendor_name] = vendor
        cores, ram, ports = size
        product = catalog.create_product(
            session,
            marketplace,
            vendor,
            slug=slug,
            content={
                "name": name,
                "short_description": short,
                "long_description": long,
                "category_slug": category,
                "tags": tags,
                "website": f"https://{slug}.example",
                "support_email": f"support@{slug}.example",
                "product_type": product_type,
                "trial_days": trial,
                "deployment": [_target(product_type, cores, ram, ports)],
            },
        )
        catalog.set_plans(session, product, plans)
        logo = save_image(
            session, storage, logo_png(colour, index), marketplace_id=marketplace.id, uploaded_by_id=admin.id
        )
        catalog.set_logo(session, product, logo)
        catalog.submit(session, product)
        catalog.approve(session, product, admin)
    customers = {
        o.name: o
        for o in session.scalars(
            sa.select(Organisation).where(
                Organisation.marketplace_id == marketplace.id, Organisation.kind == OrganisationKind.CUSTOMER
            )
        )
    }
    for customer, slug, rating, comment in REVIEWS:
        reviewed = session.scalar(
            sa.select(Product).where(Product.slug == slug, Product.marketplace_id == marketplace.id)
        )
        organisation = customers.get(customer)
        if reviewed is None or organisation is None:
            continue
        session.add(
            Review(product_id=reviewed.id, organisation_id=organisation.id, rating=rating, comment=comment)
        )
        reviewed.rating_count += 1
        reviewed.rating_sum += rating
    session.flush()
    return True
