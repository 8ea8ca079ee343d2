# GET /api/voice-token: a short-lived token that lets the signed-in user open
# one dgrelay session. settings.JWT_SECRET is the relay's JWT_SECRET (32+ bytes),
# read from the environment, never committed.
from datetime import datetime, timedelta, timezone

import jwt  # PyJWT
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.cache import never_cache


@never_cache
@login_required
def voice_token(request):
    now = datetime.now(timezone.utc)
    # sub is the user's identity in the relay's logs and per-user limits.
    # 60 s is enough: the relay checks exp once, when the socket opens.
    token = jwt.encode(
        {"sub": str(request.user.pk), "iat": now, "exp": now + timedelta(seconds=60)},
        settings.JWT_SECRET,
        algorithm="HS256",
    )
    return JsonResponse({"token": token})
