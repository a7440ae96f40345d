"""A believable demo: a platform admin, vendors with a dozen published products, and two
customer companies who reviewed some of them.

Loaded by ``make run`` on first start and by ``flask mercato demo-data``; loading twice
changes nothing. Later features (orders) add their demo rows here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from cassetto import Storage
from cmw import demo_catalog
from cmw.accounts import service as accounts
from cmw.accounts.models import OrganisationKind, Role
from cmw.crypto import Sealer
from cmw.marketplaces.service import platform
from deployer import service as deployments


@dataclass(frozen=True)
class DemoLogin:
    role: str
    email: str
    password: str
    name: str
    organisation: str | None = None
    country: str = "IT"
    vat_number: str | None = None


LOGINS = (
    DemoLogin("admin", "admin@mercato.example", "demo-admin-2026", "Ada Admin"),
    DemoLogin(
        "vendor",
        "vendor@acmesoft.example",
        "demo-vendor-2026",
        "Victor Vendor",
        "AcmeSoft",
        "DE",
        "DE811907980",
    ),
    DemoLogin(
        "vendor",
        "sales@dataforge.example",
        "demo-vendor-2026",
        "Dana Forge",
        "DataForge",
        "FR",
        "FR40303265045",
    ),
    DemoLogin(
        "customer",
        "customer@globex.example",
        "demo-customer-2026",
        "Carla Customer",
        "Globex",
        "IT",
        "IT00743110157",
    ),
    DemoLogin("customer", "it@initech.example", "demo-customer-2026", "Ivan Initech", "Initech", "NL", None),
)


DEMO_CLOUD = "demo-cloud"


def load(session: Session, storage: Storage, sealer: Sealer | None = None) -> bool:
    """Create what is missing; returns True if anything was created."""
    marketplace = platform(session)
    created = False
    if sealer is not None and deployments.by_slug(session, DEMO_CLOUD) is None:
        # the demo products deploy here: Libcloud's in-memory dummy driver
        deployments.create_cloud_account(
            session,
            sealer,
            deployments.CloudAccountInput(
                slug=DEMO_CLOUD, name="Demo cloud (Libcloud dummy driver)", provider="dummy", credentials={}
            ),
        )
        created = True
    for login in LOGINS:
        if accounts.find_user(session, login.email) is not None:
            continue
        created = True
        user = accounts.create_user(
            session, email=login.email, name=login.name, password=login.password, email_verified=True
        )
        if login.role == "admin":
            accounts.grant(session, user, marketplace, Role.ADMIN)
            continue
        kind = OrganisationKind.VENDOR if login.role == "vendor" else OrganisationKind.CUSTOMER
        assert login.organisation is not None
        organisation = accounts.create_organisation(
            session,
            marketplace,
            kind=kind,
            name=login.organisation,
            billing=accounts.BillingDetails(
                legal_name=f"{login.organisation} S.p.A."
                if login.country == "IT"
                else f"{login.organisation} Ltd",
                country=login.country,
                vat_number=login.vat_number,
                address_line1="1 Demo Street",
                postal_code="00100",
                city="Demo City",
            ),
        )
        accounts.grant(session, user, marketplace, Role(login.role), organisation)
    admin = accounts.find_user(session, LOGINS[0].email)
    assert admin is not None
    return demo_catalog.load(session, storage, marketplace, admin) or created
