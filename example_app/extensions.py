"""The app's extension instances, created once and bound to each app by ``create_app``."""

from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailOAuth

db = SQLAlchemy()
mailoauth = MailOAuth()
