"""Forms of the pages (Flask-WTF, so each carries its CSRF token)."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired, MultipleFileField
from marshmallow import ValidationError as MarshmallowError
from marshmallow import validate
from wtforms import (
    BooleanField,
    ColorField,
    EmailField,
    FieldList,
    Form,
    FormField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    URLField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget


class SignInForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class SignOutForm(FlaskForm):  # type: ignore[misc]
    pass


class OrderForm(FlaskForm):  # type: ignore[misc]
    """Order a plan (or start the trial) of the product page's product."""

    plan = SelectField("Plan", validators=[DataRequired()])
    quantity = IntegerField("Quantity", default=1, validators=[Optional(), NumberRange(min=1, max=100_000)])
    target = SelectField("Cloud and region", validators=[Optional()])
    own_cloud_account = SelectField("Run it in", validators=[Optional()])
    saved_key = SelectField("Use one of your saved SSH keys", validators=[Optional()])
    ssh_public_key = TextAreaField(
        "Your SSH public key (optional)", validators=[Optional(), Length(max=16_384)]
    )
    trial = BooleanField("Start with the free trial")


class SignUpForm(FlaskForm):  # type: ignore[misc]
    """A new customer: the person and their company."""

    name = StringField("Your name", validators=[DataRequired(), Length(max=120)])
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField(
        "Password (at least 12 characters)", validators=[DataRequired(), Length(max=256)]
    )
    company = StringField("Company", validators=[DataRequired(), Length(max=200)])
    country = StringField("Country (two letters, e.g. IT)", validators=[DataRequired(), Length(min=2, max=2)])


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A button that acts on something (cancel, submit, retry, mark read): its CSRF token is
    all it carries."""


class RejectOrderForm(FlaskForm):  # type: ignore[misc]
    reason = TextAreaField(
        "Reason",
        validators=[DataRequired("Say why: the customer reads it."), Length(max=1000)],
        description="The customer reads it.",
    )


class ReviewForm(FlaskForm):  # type: ignore[misc]
    rating = SelectField(
        "Your rating",
        choices=[
            SelectChoice(v, label)
            for v, label in (("5", "5: excellent"), ("4", "4"), ("3", "3"), ("2", "2"), ("1", "1: poor"))
        ],
    )
    comment = TextAreaField("Comment (optional)", validators=[Optional(), Length(max=5000)])


class ReplyForm(FlaskForm):  # type: ignore[misc]
    reply = TextAreaField("Your reply", validators=[DataRequired(), Length(max=5000)])


class ReviewDecisionForm(FlaskForm):  # type: ignore[misc]
    """Approve a submitted revision, or send it back with the reason."""

    reason = TextAreaField("What the vendor has to change", validators=[Optional(), Length(max=5000)])


# ------------------------------------------------------------------ vendors' editor
# The editor's forms carry the fields and the CSRF token; the values are checked by the
# API's schemas and the catalog service, so the pages and the API accept the same input.
class ProductForm(FlaskForm):  # type: ignore[misc]
    slug = StringField(
        "Address name",
        validators=[DataRequired(), Length(max=80)],
        description="Lowercase letters, digits and hyphens: the product's page is /products/<address name>.",
    )
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    short_description = StringField(
        "Short description", validators=[Optional(), Length(max=300)], description="One line for the cards."
    )
    long_description = TextAreaField(
        "Description",
        validators=[Optional(), Length(max=50_000)],
        description="Markdown: **bold**, lists, links.",
    )
    category = SelectField("Category", validators=[DataRequired()])
    tags = StringField("Tags", validators=[Optional(), Length(max=900)], description="Separated by commas.")
    product_type = SelectField(
        "Kind of product",
        choices=[
            SelectChoice("vm_app", "Application on a VM (runs a setup script, has a data disk)"),
            SelectChoice("bare_vm", "Bare VM (the customer sets it up)"),
        ],
    )
    trial_days = IntegerField(
        "Free trial, in days",
        default=0,
        validators=[Optional(), NumberRange(min=0, max=365)],
        description="0 for no trial.",
    )
    requires_approval = BooleanField(
        "Orders need my approval",
        description="New orders, trials and plan changes wait in your Approvals until you approve them.",
    )
    website = URLField("Website", validators=[Optional(), Length(max=500)])
    support_email = EmailField("Support e-mail", validators=[Optional(), Length(max=254)])


class UploadForm(FlaskForm):  # type: ignore[misc]
    file = FileField(
        "Image (PNG, JPEG or WebP, at most 5 MB)", validators=[FileRequired("Choose an image file.")]
    )


class ComponentForm(Form):  # type: ignore[misc]
    """One price component of a plan; a row whose kind is left blank is not used."""

    kind = SelectField(
        "Kind",
        choices=[
            SelectChoice("", "(not used)"),
            SelectChoice("flat", "Recurring fee"),
            SelectChoice("setup", "Setup fee, once"),
            SelectChoice("per_unit", "Per unit (the customer chooses how many)"),
            SelectChoice("metered", "By usage (metered)"),
        ],
        validators=[Optional()],
    )
    label = StringField("Label", validators=[Optional(), Length(max=100)])
    unit_price = StringField("Price", validators=[Optional(), Length(max=30)])
    metric = StringField("Metric (usage only)", validators=[Optional(), Length(max=100)])
    unit = StringField("Unit (usage only)", validators=[Optional(), Length(max=30)])
    pricing_model = SelectField(
        "Price model (usage only)",
        choices=[
            SelectChoice("", "(none)"),
            SelectChoice("per_unit", "Same price per unit"),
            SelectChoice("graduated", "Graduated tiers"),
            SelectChoice("volume", "Volume tiers"),
        ],
        validators=[Optional()],
    )
    included_quantity = StringField("Included quantity", validators=[Optional(), Length(max=30)])
    tiers = TextAreaField(
        "Tiers (usage only)",
        validators=[Optional(), Length(max=5000)],
        description=(
            "One per line: from-up to: price, e.g. 0-100: 0.10 then 100-: 0.05; add + 5 for a flat fee."
        ),
    )
    min_quantity = IntegerField("Minimum quantity", validators=[Optional()])
    max_quantity = IntegerField("Maximum quantity", validators=[Optional()])
    infrastructure = BooleanField(
        "Infrastructure: the machine's cost, not charged when the customer runs it in their own cloud"
    )


#: price component rows on the plan form
COMPONENT_ROWS = 5


class PlanForm(FlaskForm):  # type: ignore[misc]
    code = StringField(
        "Code",
        validators=[DataRequired(), Length(max=50)],
        description="Lowercase, e.g. basic; it stays the same across revisions.",
    )
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    currency = StringField("Currency", default="EUR", validators=[DataRequired(), Length(min=3, max=3)])
    billing_period = SelectField(
        "Billed every", choices=[SelectChoice("month", "month"), SelectChoice("year", "year")]
    )
    components = FieldList(FormField(ComponentForm), min_entries=COMPONENT_ROWS, max_entries=30)
    vm_cores = IntegerField("CPU cores", validators=[Optional(), NumberRange(min=1, max=512)])
    vm_ram_mib = IntegerField("Memory (MiB)", validators=[Optional(), NumberRange(min=256)])
    data_disk_gib = IntegerField("Data disk (GiB)", validators=[Optional(), NumberRange(min=1, max=65_536)])


class TargetForm(FlaskForm):  # type: ignore[misc]
    """Where and how the product is deployed: one cloud account and region."""

    cloud_account = SelectField("Cloud account", validators=[DataRequired()])
    region = StringField(
        "Region",
        validators=[Optional(), Length(max=64)],
        description="Leave blank for the account's default.",
    )
    image = StringField(
        "Image", validators=[DataRequired(), Length(max=255)], description="The cloud's image id."
    )
    cores = IntegerField("CPU cores", default=2, validators=[DataRequired(), NumberRange(min=1, max=512)])
    ram_mib = IntegerField("Memory (MiB)", default=4096, validators=[DataRequired(), NumberRange(min=256)])
    root_disk_gib = IntegerField(
        "Root disk (GiB)", default=20, validators=[DataRequired(), NumberRange(min=1)]
    )
    data_disk_gib = IntegerField("Data disk (GiB)", validators=[Optional(), NumberRange(min=1)])
    inbound_ports = StringField(
        "Open ports",
        validators=[Optional(), Length(max=2000)],
        description="Separated by commas, e.g. 443, 80/tcp, 53/udp from 10.0.0.0/8.",
    )
    setup_script = TextAreaField("Setup script", validators=[Optional(), Length(max=100_000)])
    app_url_template = StringField(
        "Application address", validators=[Optional(), Length(max=500)], description="e.g. https://{ip}/"
    )
    default_login = StringField("Login shown to the customer", validators=[Optional(), Length(max=64)])
    final_snapshot = BooleanField("Snapshot the data disk before it is deleted")


# ------------------------------------------------------------------ customers' panel
class ChangePlanForm(FlaskForm):  # type: ignore[misc]
    plan = SelectField("New plan", validators=[DataRequired()])


class QuantityForm(FlaskForm):  # type: ignore[misc]
    quantity = IntegerField("Quantity", validators=[DataRequired(), NumberRange(min=1, max=100_000)])


class TokenForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        "Name", validators=[DataRequired(), Length(max=100)], description="What it is for, e.g. CI pipeline."
    )
    expires_in_days = SelectField(
        "Expires",
        choices=[
            SelectChoice("30", "in 30 days"),
            SelectChoice("90", "in 90 days"),
            SelectChoice("365", "in a year"),
            SelectChoice("0", "never"),
        ],
        default="90",
    )


class PasswordForm(FlaskForm):  # type: ignore[misc]
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=256)])
    new = PasswordField("New password (at least 12 characters)", validators=[DataRequired(), Length(max=256)])


class DetailsForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    language = StringField(
        "Language",
        validators=[
            DataRequired(),
            Length(max=35),
            Regexp(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", message="a language tag such as en, de or it-IT"),
        ],
        description="A language tag such as en, de or it-IT; the instances you order are set up in it.",
    )


class OnBehalfOrderForm(FlaskForm):  # type: ignore[misc]
    """An administrator orders for one of the marketplace's customers (no approval needed)."""

    organisation_id = SelectField("Customer", validators=[DataRequired("Choose the customer.")])
    product = StringField(
        "Product",
        validators=[DataRequired(), Length(max=80)],
        description="Its address name, as in /products/<name>, e.g. wiki-server.",
    )
    plan = StringField("Plan code", validators=[DataRequired(), Length(max=50)], description="e.g. team")
    quantity = IntegerField("Quantity", default=1, validators=[Optional(), NumberRange(min=1, max=100_000)])


class EraseForm(FlaskForm):  # type: ignore[misc]
    confirm_email = EmailField(
        "Type your e-mail address to confirm",
        validators=[DataRequired("Type the e-mail address you sign in with."), Length(max=254)],
    )


# ------------------------------------------------------------------ administrators
class CloudAccountForm(FlaskForm):  # type: ignore[misc]
    """A cloud account: its Libcloud provider, credentials (sealed when stored) and the SSH
    endpoint the deployer uses."""

    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    slug = StringField(
        "Short name",
        validators=[DataRequired(), Length(max=63)],
        description="What vendors' deployment targets name.",
    )
    provider = SelectField("Libcloud provider", validators=[DataRequired()])
    region = StringField("Region", validators=[Optional(), Length(max=64)])
    credentials = TextAreaField(
        "Credentials",
        validators=[Optional(), Length(max=20_000)],
        description="One per line, name = value: key = …, secret = …. Stored encrypted, never shown again.",
    )
    driver_options = TextAreaField(
        "Driver options",
        validators=[Optional(), Length(max=5000)],
        description="One per line, name = value, e.g. host = 127.0.0.1 or secure = false.",
    )
    default_network = StringField("Default network", validators=[Optional(), Length(max=255)])
    ssh_host = StringField(
        "SSH host override",
        validators=[Optional(), Length(max=255)],
        description="Where the deployer connects instead of the VM's address (a bastion, a test sshd).",
    )
    ssh_port = IntegerField("SSH port", validators=[Optional(), NumberRange(min=1, max=65535)])
    ssh_username = StringField("SSH user", default="ubuntu", validators=[DataRequired(), Length(max=64)])
    is_active = BooleanField("Active (deployments may use it)", default=True)


class TaxRateForm(FlaskForm):  # type: ignore[misc]
    seller_country = StringField("Seller country", validators=[DataRequired(), Length(min=2, max=2)])
    buyer_country = StringField(
        "Buyer country",
        validators=[DataRequired(), Length(min=1, max=2)],
        description="Two letters, or * for any other.",
    )
    rate = StringField("Rate (%)", validators=[DataRequired(), Length(max=10)])
    name = StringField("Name on the invoice", default="VAT", validators=[DataRequired(), Length(max=60)])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # it shares the billing page with the seller form: its fields (seller_country) get
        # ids of their own, so each label names its own field
        kwargs.setdefault("prefix", "rate")
        super().__init__(*args, **kwargs)


class SellerForm(FlaskForm):  # type: ignore[misc]
    seller_legal_name = StringField("Legal name", validators=[Optional(), Length(max=200)])
    seller_country = StringField("Country (two letters)", validators=[Optional(), Length(min=2, max=2)])
    seller_vat_number = StringField("VAT number", validators=[Optional(), Length(max=32)])
    seller_address = TextAreaField("Address (one line each)", validators=[Optional(), Length(max=1200)])
    payment_terms_days = IntegerField(
        "Payment terms (days)", default=14, validators=[NumberRange(min=0, max=180)]
    )
    payment_instructions = TextAreaField("How to pay", validators=[Optional(), Length(max=2000)])
    reminder_days = StringField(
        "Reminders (days after the due date)",
        default="1, 7, 14",
        validators=[Optional(), Length(max=60)],
        description="comma-separated, e.g. 1, 7, 14",
    )
    past_due_after_days = IntegerField("Past due after (days)", default=3, validators=[NumberRange(0, 365)])
    suspend_after_days = IntegerField(
        "Instances suspended after (days)", default=14, validators=[NumberRange(0, 365)]
    )
    cancel_after_days = IntegerField("Cancelled after (days)", default=30, validators=[NumberRange(0, 365)])

    def validate_reminder_days(self, field: StringField) -> None:
        try:
            days = [int(p) for p in (field.data or "").replace(" ", "").split(",") if p]
        except ValueError:
            raise ValidationError("whole numbers of days, separated by commas") from None
        if any(d < 0 or d > 365 for d in days) or len(days) > 10:
            raise ValidationError("up to 10 days, each from 0 to 365")


class BudgetForm(FlaskForm):  # type: ignore[misc]
    amount = StringField("Monthly budget", validators=[Optional(), Length(max=20)], description="e.g. 250")
    currency = StringField("Currency", default="EUR", validators=[Optional(), Length(max=3)])


class CouponForm(FlaskForm):  # type: ignore[misc]
    code = StringField("Coupon code", validators=[DataRequired(), Length(max=40)])


class SshKeyForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Name", validators=[DataRequired(), Length(max=100)], description="e.g. laptop")
    public_key = TextAreaField(
        "Public key",
        validators=[DataRequired(), Length(max=16_384)],
        description="ssh-ed25519 AAAA... you@host",
    )


class CouponCreateForm(FlaskForm):  # type: ignore[misc]
    code = StringField(
        "Code", validators=[DataRequired(), Length(max=40)], description="What customers type."
    )
    kind = SelectField(
        "Kind", choices=[SelectChoice("percent", "A percentage off"), SelectChoice("fixed", "An amount off")]
    )
    value = StringField("Percent or amount", validators=[DataRequired(), Length(max=20)])
    currency = StringField("Currency (amounts only)", validators=[Optional(), Length(min=3, max=3)])
    duration = SelectField(
        "For",
        choices=[
            SelectChoice("once", "one period"),
            SelectChoice("repeating", "a number of periods"),
            SelectChoice("forever", "ever"),
        ],
    )
    periods = IntegerField(
        "Periods (a number of periods)", validators=[Optional(), NumberRange(min=1, max=120)]
    )
    max_redemptions = IntegerField("Redemptions at most", validators=[Optional(), NumberRange(min=1)])


class SignInSettingsForm(FlaskForm):  # type: ignore[misc]
    """How people sign in to this marketplace: passwords, and its own identity provider."""

    local_sign_in = BooleanField("People may sign in with a password")
    issuer = StringField(
        "Keycloak realm (issuer URL)",
        validators=[Optional(), Length(max=500)],
        description="https://sso.example.com/realms/acme; empty uses the parent marketplace's provider.",
    )
    client_id = StringField("Client id", validators=[Optional(), Length(max=255)])
    client_secret = PasswordField(
        "Client secret",
        validators=[Optional(), Length(max=500)],
        description="Stored encrypted, never shown again; leave empty to keep the stored one.",
    )
    audience = StringField(
        "API audience", validators=[Optional(), Length(max=255)], description="Empty: the client id."
    )
    roles = TextAreaField(
        "Role mapping",
        validators=[Optional(), Length(max=5000)],
        description="One per line, realm role = Mercato role (customer, vendor, reseller, admin).",
    )
    display_name = StringField("Button label", validators=[Optional(), Length(max=100)])
    default_country = StringField(
        "Country of new organisations",
        validators=[Optional(), Length(min=2, max=2)],
        description="ISO code, for people the provider signs up without an address.",
    )
    provision_users = BooleanField("Create Keycloak users on sign-up, disable them with their Mercato user")
    introspect = BooleanField("Ask Keycloak about every API token (introspection)")


class BrandingForm(FlaskForm):  # type: ignore[misc]
    """How a marketplace looks to its customers: every page and e-mail carries it."""

    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    domain = StringField(
        "Host name",
        validators=[Optional(), Length(max=253)],
        description="shop.example.com, with its DNS pointing at the platform; empty: only the /m/ prefix.",
    )
    description = TextAreaField(
        "Description", validators=[Optional(), Length(max=5000)], description="Shown on the home page."
    )
    primary_colour = ColorField(
        "Primary colour",
        validators=[DataRequired()],
        description="The page header, under white text: dark enough for 4.5:1 contrast.",
    )
    accent_colour = ColorField(
        "Accent colour",
        validators=[DataRequired()],
        description="Buttons, under black text: light enough for 4.5:1 contrast.",
    )
    support_email = EmailField("Support e-mail", validators=[Optional(), Length(max=254)])
    legal_footer = TextAreaField(
        "Legal footer",
        validators=[Optional(), Length(max=5000)],
        description="Company, registration and address: on every page, e-mail and invoice.",
    )
    email_sender_name = StringField(
        "E-mail sender name", validators=[Optional(), Length(max=120)], description="Empty: the name."
    )


class MarketplacePricingForm(FlaskForm):  # type: ignore[misc]
    default_markup_percent = StringField(
        "Default mark-up (%)",
        validators=[Optional(), Length(max=20)],
        description="Over the parent's prices, for every product without a mark-up of its own; empty: none.",
    )
    commission_percent = StringField(
        "Commission (%)",
        validators=[DataRequired(), Length(max=20)],
        description="The part of the vendors' prices this marketplace keeps, for products published here.",
    )


class ChildMarketplaceForm(FlaskForm):  # type: ignore[misc]
    """A distributor under the platform, or a reseller under a distributor."""

    name = StringField("Name", validators=[DataRequired(), Length(max=120)])
    slug = StringField(
        "Short name",
        validators=[DataRequired(), Length(max=63)],
        description="Lowercase letters, digits and hyphens; it is served under /m/<short name> too.",
    )
    domain = StringField("Host name", validators=[Optional(), Length(max=253)])
    admin = EmailField(
        "Its administrator's e-mail",
        validators=[Optional(), Length(max=254)],
        description="Someone who has signed up already; you administer it too.",
    )


class WebhookForm(FlaskForm):  # type: ignore[misc]
    url = URLField(
        "Endpoint URL",
        validators=[DataRequired(), Length(max=2000)],
        description="An https:// address of yours that accepts POST requests.",
    )
    description = StringField("Description", validators=[Optional(), Length(max=200)])
    topics = SelectMultipleField(
        "Events",
        choices=[],
        validators=[Optional()],
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        description="None ticked: every event.",
    )


def email_address(_form: Any, field: Any) -> None:
    """The same e-mail check as the API's (marshmallow's), with words for a person."""
    try:
        validate.Email()(field.data)
    except MarshmallowError:
        raise ValidationError("Enter an e-mail address, such as help@example.com.") from None


class ForwardingForm(FlaskForm):  # type: ignore[misc]
    forward_url = URLField(
        "Webhook URL",
        validators=[Optional(), Length(max=2000)],
        description="An https:// address of your ticket system that accepts POST requests. Empty: none.",
    )
    forward_email = EmailField(
        "E-mail address",
        validators=[Optional(), Length(max=254), email_address],
        description="Your ticket system's address; its replies come back into the thread. Empty: none.",
    )


class TicketReplyForm(FlaskForm):  # type: ignore[misc]
    body = TextAreaField("Your message", validators=[DataRequired(), Length(max=20_000)])
    files = MultipleFileField(
        "Attachments",
        description="Up to 5 files of 10 MB: images, PDF, text and log files, ZIP archives.",
    )


class TicketForm(TicketReplyForm):
    subject = StringField("Subject", validators=[DataRequired(), Length(max=200)])
    about = SelectField("About", choices=[], validate_choice=False)


class OwnCloudForm(FlaskForm):  # type: ignore[misc]
    """A customer's own cloud account: the provider's credentials, tried before they are kept."""

    name = StringField("Name", validators=[DataRequired(), Length(max=120)], description="e.g. Our AWS")
    provider = SelectField(
        "Cloud",
        choices=[
            SelectChoice("ec2", "Amazon Web Services (EC2)"),
            SelectChoice("azure_arm", "Microsoft Azure"),
            SelectChoice("other", "Another cloud (any Libcloud provider)"),
        ],
        validators=[DataRequired()],
    )
    other_provider = StringField(
        "Libcloud provider name (another cloud)",
        validators=[Optional(), Length(max=40)],
        description="e.g. openstack, gce, digital_ocean",
    )
    region = StringField("Region", validators=[Optional(), Length(max=64)], description="e.g. eu-west-1")
    key = StringField(
        "Access key ID (AWS) or application (client) ID (Azure)", validators=[Optional(), Length(max=500)]
    )
    secret = PasswordField(
        "Secret access key (AWS) or client secret (Azure)", validators=[Optional(), Length(max=2000)]
    )
    tenant_id = StringField("Tenant ID (Azure)", validators=[Optional(), Length(max=100)])
    subscription_id = StringField("Subscription ID (Azure)", validators=[Optional(), Length(max=100)])
    extra = TextAreaField(
        "More credentials or driver settings",
        validators=[Optional(), Length(max=5000)],
        description="One name=value per line, as the Libcloud driver names them (e.g. host=..., port=...).",
    )
    ssh_username = StringField(
        "The image's login user",
        default="ubuntu",
        validators=[DataRequired(), Length(max=64)],
        description="The platform signs in as this user to set the machine up.",
    )
