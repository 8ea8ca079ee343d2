from django.urls import path

from . import views

urlpatterns = [
    path("api/voice-token", views.voice_token),
]
