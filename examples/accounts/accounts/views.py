"""Sign-up, activation and password reset: each request answers at once, the e-mail goes to a task."""

from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.encoding import force_str
from django.utils.http import urlsafe_base64_decode
from django.views.decorators.http import require_POST

from accounts.tasks import send_activation_email, send_password_reset_email

User = get_user_model()


@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    email = request.POST.get("email", "").strip().lower()
    if not email or User.objects.filter(email=email).exists():
        return HttpResponseBadRequest("an e-mail address that has no account yet, please")
    with transaction.atomic():
        user = User.objects.create_user(email, email, request.POST.get("password"), is_active=False)
        # After COMMIT: the worker must find the user it is asked to write to.
        send_activation_email.delay_on_commit(user.pk)
    return HttpResponse("Check your inbox to activate your account.", status=201)


def activate(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    user = User.objects.filter(pk=force_str(urlsafe_base64_decode(uidb64))).first()
    if user is None or not default_token_generator.check_token(user, token):
        return HttpResponseBadRequest("This activation link is invalid or was already used.")
    user.is_active = True
    user.save(update_fields=["is_active"])
    return HttpResponse("Your account is active.")


@require_POST
def password_reset(request: HttpRequest) -> HttpResponse:
    user = User.objects.filter(email=request.POST.get("email", "").strip().lower(), is_active=True).first()
    if user is not None:
        send_password_reset_email.delay(user.pk)
    # The same answer either way: the page must not tell who has an account.
    return HttpResponse("If that address has an account, a reset link is on its way.")
