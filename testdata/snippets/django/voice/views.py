# GET /api/voice-token: a short-lived token that lets the signed-in user open
# one dgrelay session. settings.JWT_SECRET is the relay's JWT_SECRET (32+ bytes),
# read from the environment, never committed.
from datetime import datetime, timedelta, timezone

import jwt  # PyJWT
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.cache import never_cache


@never_cache
def voice_token(request):
    # 401 JSON, as the Express route answers: login_required's redirect to the
    # login page would reach the app's fetch as a 200 HTML page.
    if not request.user.is_authenticated:
        return JsonResponse({"error": "sign in first"}, status=401)
    now = datetime.now(timezone.utc)
    # sub is the user's identity in the relay's logs and per-user limits.
    # 60 s is enough: the relay checks exp once, when the socket opens.
    token = jwt.encode(
        {"sub": str(request.user.pk), "iat": now, "exp": now + timedelta(seconds=60)},
        settings.JWT_SECRET,
        algorithm="HS256",
    )
    return JsonResponse({"token": token})
