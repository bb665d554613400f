"""The e-mails of the accounts app, sent by workers on the `email` queue (CELERY_TASK_ROUTES).

Every e-mail task retries while the mail server is down or refuses the message,
waiting longer each time (1 s, 2 s, 4 s ... up to 10 minutes, drawn at random within
each so a thousand queued mails don't hit a recovering server in the same second).
It is acknowledged only after it ran (acks_late), so a worker that dies mid-send
leaves the message to be delivered again, not lost. A mail still failing after its
retries lands in the dead-letter queue: `conveyor -A core dlq replay TASK_ID`.
"""

import smtplib
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import EmailMessage, get_connection, send_mail
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import Delivery, Newsletter
from conveyor import shared_task

User = get_user_model()

# Down, refused, or dropped mid-session: worth another try later.
MAIL_ERRORS = (smtplib.SMTPException, OSError)
NEWSLETTER_BATCH_SIZE = 100


def _link(user, route: str) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return f"{settings.SITE_URL}/{route}/{uid}/{default_token_generator.make_token(user)}/"


@shared_task(
    autoretry_for=MAIL_ERRORS,
    retry_backoff=True,
    retry_backoff_max=600,
    retry_kwargs={"max_retries": 8},
    acks_late=True,
    time_limit=60,
    soft_time_limit=50,
)
def send_activation_email(user_id: int) -> str:
    user = User.objects.get(pk=user_id)
    send_mail(
        "Activate your account",
        f"Welcome! Open this link within {settings.ACCOUNT_ACTIVATION_DAYS} days: {_link(user, 'activate')}",
        None,
        [user.email],
    )
    return user.email


@shared_task(
    autoretry_for=MAIL_ERRORS,
    retry_backoff=True,
    retry_kwargs={"max_retries": 3},  # a reset link an hour late is useless: give up sooner
    acks_late=True,
    time_limit=60,
)
def send_password_reset_email(user_id: int) -> str:
    user = User.objects.get(pk=user_id)
    send_mail("Reset your password", f"Choose a new password: {_link(user, 'reset')}", None, [user.email])
    return user.email


@shared_task
def send_newsletter(newsletter_id: int) -> int:
    """Split the active users into batches, one task each; returns how many batches."""
    ids = list(User.objects.filter(is_active=True).order_by("pk").values_list("pk", flat=True))
    batches = [ids[i : i + NEWSLETTER_BATCH_SIZE] for i in range(0, len(ids), NEWSLETTER_BATCH_SIZE)]
    send_newsletter_batch.map([(newsletter_id, batch) for batch in batches])
    return len(batches)


@shared_task(
    autoretry_for=MAIL_ERRORS,
    retry_backoff=True,
    retry_kwargs={"max_retries": 8},
    acks_late=True,
    # The provider allows 500 mails a second: 5 batches of 100, across every worker.
    rate_limit="5/s",
)
def send_newsletter_batch(newsletter_id: int, user_ids: list[int]) -> int:
    """Send one newsletter to these users over one SMTP session; returns how many were sent.

    Each delivery is recorded right after its mail went out, so a retry (the server
    dropped us halfway) writes only to the users not reached yet.
    """
    newsletter = Newsletter.objects.get(pk=newsletter_id)
    done = set(
        Delivery.objects.filter(newsletter=newsletter, user_id__in=user_ids).values_list("user_id", flat=True)
    )
    users = User.objects.filter(pk__in=set(user_ids) - done, is_active=True).order_by("pk")
    sent = 0
    with get_connection() as connection:
        for user in users:
            message = EmailMessage(
                newsletter.subject,
                newsletter.body,
                to=[user.email],
                headers={"X-Newsletter": str(newsletter.pk)},
                connection=connection,
            )
            message.send()
            Delivery.objects.create(newsletter=newsletter, user=user)
            sent += 1
    return sent


@shared_task
def delete_expired_accounts() -> int:
    """Nightly (CELERY_BEAT_SCHEDULE): remove sign-ups never activated in time; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.ACCOUNT_ACTIVATION_DAYS)
    expired = User.objects.filter(is_active=False, last_login__isnull=True, date_joined__lt=cutoff)
    _, per_model = expired.delete()
    return per_model.get(User._meta.label, 0)
