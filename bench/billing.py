"""``python -m bench.billing``: a billing run over many subscriptions, and PDF throughput.

1. A fresh PostgreSQL database (as ``python -m bench``), migrated.
2. Seeded in bulk: one product with a flat, a per-unit and a metered plan (graduated and
   volume tiers), ``BENCH_SUBSCRIPTIONS`` (default 100,000) active subscriptions over
   customers of five subscriptions each, a third of them metered, and
   ``BENCH_USAGE`` (default 1,000,000) hourly usage records over their first period.
   Each subscription started 40 days before the run, so the run bills two periods' fees
   in advance, the setup fee and the first period's usage.
3. The billing run, in this process: seconds, subscriptions per second and peak memory
   (RSS), against the target of under 60 s and 1 GiB for 100,000 subscriptions.
4. PDF rendering of ``BENCH_PDFS`` (default 300) of the invoices on one core: invoices
   per second, against the target of 100.

Prints the figures and writes them to ``var/bench/billing.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg

from bench.__main__ import ROOT, BenchError, child_environment, fresh_database, run_step

OUTPUT = ROOT / "var" / "bench" / "billing.json"
PER_CUSTOMER = 5


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed(database_url: str, subscriptions: int, usage: int, at: dt.datetime) -> dict[str, int]:
    """Everything through the services once (product, plans), then rows in bulk with COPY."""
    from app import create_app
    from cmw.accounts import service as accounts
    from cmw.accounts.models import OrganisationKind
    from cmw.catalog import service as catalog
    from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel, ProductType
    from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
    from cmw.extensions import current_session
    from cmw.marketplaces.service import platform

    app = create_app()
    with app.app_context():
        session = current_session()
        marketplace = platform(session)
        admin = accounts.create_user(
            session, email="bench-admin@example.test", name="A", password="bench-password-1"
        )
        vendor = accounts.create_organisation(
            session, marketplace, kind=OrganisationKind.VENDOR, name="Bench vendor",
            billing=accounts.BillingDetails(legal_name="Bench vendor Ltd", country="IE"),
        )  # fmt: skip
        size = {"cores": 1, "ram_mib": 1024, "root_disk_gib": 10}
        target = {"cloud_account": "bench", "image": "1", "size": size, "inbound_ports": []}
        content = {
            "name": "Billed App",
            "category_slug": "collaboration",
            "product_type": ProductType.BARE_VM,
            "deployment": [target],
        }
        product = catalog.create_product(session, marketplace, vendor, slug="billed-app", content=content)
        D = Decimal
        plans = [
            PlanSpec("flat", "Flat", "EUR", BillingPeriod.MONTH, (
                ComponentSpec(ComponentKind.FLAT, "Fee", unit_price=D("29")),
                ComponentSpec(ComponentKind.SETUP, "Setup", unit_price=D("49")),
            )),
            PlanSpec("seats", "Seats", "EUR", BillingPeriod.MONTH, (
                ComponentSpec(ComponentKind.PER_UNIT, "Seats", unit_price=D("4.50"), unit="seat"),
            )),
            PlanSpec("metered", "Metered", "EUR", BillingPeriod.MONTH, (
                ComponentSpec(ComponentKind.FLAT, "Base", unit_price=D("5")),
                ComponentSpec(ComponentKind.METERED, "Traffic", metric="bandwidth.gb", unit="GB",
                              pricing_model=PricingModel.GRADUATED, included_quantity=D(10),
                              tiers=(Tier(D(0), D(100), D("0.08")), Tier(D(100), None, D("0.05")))),
                ComponentSpec(ComponentKind.METERED, "CPU", metric="cpu.hours", unit="hour",
                              pricing_model=PricingModel.VOLUME,
                              tiers=(Tier(D(0), D(500), D("0.02")), Tier(D(500), None, D("0.015")))),
            )),
        ]  # fmt: skip
        catalog.set_plans(session, product, plans)
        catalog.submit(session, product)
        catalog.approve(session, product, admin)
        session.commit()
        plan_ids = {p.code: p.id for p in product.live_version.plans}  # type: ignore[union-attr]
        marketplace_id, product_id = marketplace.id, product.id

    start = at - dt.timedelta(days=40)
    customers = (subscriptions + PER_CUSTOMER - 1) // PER_CUSTOMER
    rng = random.Random(7)
    metered: list[uuid.UUID] = []
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY organisations (id, marketplace_id, kind, name, legal_name, country, address_line1,"
            " address_line2, postal_code, city, region, has_payment_method, created_at, updated_at)"
            " FROM STDIN"
        ) as copy:
            org_ids = [uuid.uuid4() for _ in range(customers)]
            for n, org in enumerate(org_ids):
                name = f"Customer {n}"
                copy.write_row(
                    (
                        org,
                        marketplace_id,
                        "customer",
                        name,
                        name,
                        "DE",
                        "",
                        "",
                        "",
                        "",
                        "",
                        True,
                        start,
                        start,
                    )
                )
        with cur.copy(
            "COPY subscriptions (id, marketplace_id, customer_id, product_id, plan_id, quantity, status,"
            " billing_anchor, current_period_start, current_period_end, cancel_at_period_end, cloud_account,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            rows = []
            for n in range(subscriptions):
                code = ("flat", "seats", "metered")[n % 3]
                sub = uuid.uuid4()
                if code == "metered":
                    metered.append(sub)
                rows.append((sub, code))
                copy.write_row(
                    (sub, marketplace_id, org_ids[n // PER_CUSTOMER], product_id, plan_ids[code],
                     rng.randint(1, 20) if code == "seats" else 1, "active", start, start,
                     start + dt.timedelta(days=31), False, "bench", start, start)
                )  # fmt: skip
        with cur.copy(
            "COPY subscription_changes (subscription_id, kind, at, before, after) FROM STDIN"
        ) as copy:
            for sub, code in rows:
                copy.write_row(
                    (
                        sub,
                        "activated",
                        start,
                        "{}",
                        json.dumps({"plan_id": str(plan_ids[code]), "quantity": 1}),
                    )
                )
        per = max(1, usage // max(1, len(metered)))
        written = 0
        with cur.copy("COPY usage_hourly (subscription_id, metric, hour, quantity) FROM STDIN") as copy:
            for sub in metered:
                for h in range(per):
                    if written >= usage:
                        break
                    metric = "bandwidth.gb" if h % 2 == 0 else "cpu.hours"
                    copy.write_row((sub, metric, start + dt.timedelta(hours=h // 2), rng.randint(0, 40)))
                    written += 1
        conn.commit()
        cur.execute("ANALYZE")
    return {"customers": customers, "subscriptions": subscriptions, "usage_records": written}


def run() -> int:
    subscriptions = int(os.environ.get("BENCH_SUBSCRIPTIONS", "100000"))
    usage = int(os.environ.get("BENCH_USAGE", "1000000"))
    pdfs = int(os.environ.get("BENCH_PDFS", "300"))
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with (
        tempfile.TemporaryDirectory(prefix="mercato-bench-billing-") as tmp,
        fresh_database() as database_url,
    ):
        env = child_environment(database_url, Path(tmp))
        run_step([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], env, "migrating")
        os.environ.update(env)
        print(f"seeding {subscriptions:,} subscriptions and {usage:,} usage records ...", flush=True)
        began = time.perf_counter()
        seeded = seed(database_url, subscriptions, usage, at)
        print(f"seeded in {time.perf_counter() - began:.1f} s: {seeded}", flush=True)

        import sqlalchemy as sa
        from sqlalchemy.orm import sessionmaker

        from app import create_app
        from cmw.billing import service as billing
        from cmw.billing.documents import document_of
        from cmw.billing.models import Invoice
        from cmw.extensions import db
        from invoices import pdf

        app = create_app()
        with app.app_context():
            factory = sessionmaker(bind=db.engine, expire_on_commit=False)
            before = _rss_mib()
            began = time.perf_counter()
            report = billing.run(factory, at, now=at)
            seconds = time.perf_counter() - began
            peak = _rss_mib()
            with factory() as session:
                ids = list(session.scalars(sa.select(Invoice.id).order_by(Invoice.sequence).limit(pdfs)))
                documents = [document_of(session, session.get(Invoice, i)) for i in ids]  # type: ignore[arg-type]
            pdf.render(documents[0])  # fonts loaded once, as in a worker
            began = time.perf_counter()
            size = sum(len(pdf.render(d)) for d in documents)
            pdf_seconds = time.perf_counter() - began
        figures = {
            **seeded,
            "invoices": len(report.invoices),
            "lines": report.lines,
            "run_seconds": round(seconds, 2),
            "subscriptions_per_second": round(subscriptions / seconds),
            "peak_rss_mib": round(peak),
            "rss_before_run_mib": round(before),
            "pdfs": len(documents),
            "pdfs_per_second": round(len(documents) / pdf_seconds, 1),
            "pdf_kib_mean": round(size / len(documents) / 1024, 1),
        }
    print()
    print(
        f"billing run: {figures['subscriptions']:,} subscriptions, {figures['usage_records']:,} usage records"
    )
    print(
        f"  {figures['invoices']:,} invoices, {figures['lines']:,} lines in {figures['run_seconds']} s"
        f" ({figures['subscriptions_per_second']:,} subscriptions/s); peak RSS {figures['peak_rss_mib']} MiB"
    )
    print(f"  target < 60 s and < 1024 MiB for 100,000: "
          f"{'met' if seconds < 60 * subscriptions / 100_000 and peak < 1024 else 'NOT met'}")  # fmt: skip
    print(f"PDF: {figures['pdfs_per_second']} invoices/s on one core ({figures['pdf_kib_mean']} KiB each);"
          f" target 100/s: {'met' if figures['pdfs_per_second'] >= 100 else 'NOT met'}")  # fmt: skip
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(figures, indent=2))
    return 0


def main() -> int:
    try:
        return run()
    except BenchError as exc:
        print(f"bench.billing: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
