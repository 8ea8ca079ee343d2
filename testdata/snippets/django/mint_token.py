"""Runs voice/views.py the way a Django project does, for snippets_test.go.

Django's test client asks GET /api/voice-token once signed out and once signed
in as a user (through the session and auth middleware, as in a real project),
and one JSON line says what each got. JWT_SECRET comes from the environment.
"""
import json
import os

import django
from django.conf import settings

settings.configure(
    SECRET_KEY="snippet-test-only",
    JWT_SECRET=os.environ["JWT_SECRET"],
    ALLOWED_HOSTS=["testserver"],
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
    ],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    ROOT_URLCONF="voice.urls",
)
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402  (needs setup first)
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

call_command("migrate", verbosity=0)
user = get_user_model().objects.create_user("ada")

signed_out = Client().get("/api/voice-token")
client = Client()
client.force_login(user)
signed_in = client.get("/api/voice-token")

print(json.dumps({
    "user": str(user.pk),
    "signed_out_status": signed_out.status_code,
    "signed_out_type": signed_out.get("Content-Type", ""),
    "signed_out_body": signed_out.content.decode(),
    "signed_out_cache_control": signed_out.get("Cache-Control", ""),
    "status": signed_in.status_code,
    "cache_control": signed_in.get("Cache-Control", ""),
    "token": signed_in.json().get("token", "") if signed_in.status_code == 200 else "",
}))
