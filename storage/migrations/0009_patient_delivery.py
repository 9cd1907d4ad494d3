from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0008_job_progress')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Delivery',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org_id', fields.CharField(max_length=32)),
                ('event_id', fields.CharField(max_length=32)),
                ('conversation_id', fields.CharField(max_length=32)),
                ('patient_id', fields.CharField(max_length=32)),
                ('channel', fields.CharField(max_length=8)),
                ('mode', fields.CharField(max_length=16)),
                ('kind', fields.CharField(default='message', db_default='message', max_length=16)),
                ('status', fields.CharField(max_length=16)),
                ('provider_sid', fields.CharField(null=True, unique=True, max_length=64)),
                ('error', fields.CharField(null=True, max_length=300)),
                ('fallback', fields.BooleanField(default=False, db_default=False)),
                ('sending_since', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('reminders', fields.IntField(default=0, db_default=0)),
                ('reminded_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'deliveries', 'app': 'models', 'unique_together': (('event_id', 'channel', 'kind'),), 'indexes': [Index(fields=['conversation_id', 'event_id'])], 'pk_attr': 'id', 'table_description': 'How a patient-conversation message reached its patient (or did not): one per message,'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='OptOut',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('phone_number_id', fields.CharField(max_length=32)),
                ('phone', fields.CharField(max_length=20)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'opt_outs', 'app': 'models', 'unique_together': (('phone_number_id', 'phone'),), 'pk_attr': 'id', 'table_description': 'A phone that answered STOP to one of our numbers: it gets no SMS from that number'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PortalLink',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('token_hash', fields.CharField(unique=True, max_length=64)),
                ('org_id', fields.CharField(max_length=32)),
                ('patient_id', fields.CharField(max_length=32)),
                ('conversation_id', fields.CharField(max_length=32)),
                ('event_id', fields.CharField(null=True, max_length=32)),
                ('failed_checks', fields.IntField(default=0, db_default=0)),
                ('locked_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'portal_links', 'app': 'models', 'indexes': [Index(fields=['conversation_id', 'patient_id'])], 'pk_attr': 'id', 'table_description': 'A secure link sent to a patient (`/p/<token>`): only the keyed hash of its token is'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PortalSession',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('token_hash', fields.CharField(unique=True, max_length=64)),
                ('link_id', fields.CharField(max_length=32)),
                ('org_id', fields.CharField(max_length=32)),
                ('patient_id', fields.CharField(max_length=32)),
                ('conversation_id', fields.CharField(max_length=32)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('last_seen_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('ended_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'portal_sessions', 'app': 'models', 'pk_attr': 'id', 'table_description': "A patient's session in the portal, started by a link (and their DOB): a cookie"},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PortalTicket',
            fields=[
                ('token_hash', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('session_id', fields.CharField(max_length=32)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('used_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'portal_tickets', 'app': 'models', 'pk_attr': 'token_hash', 'table_description': "A one-time ticket (60 s) for the portal page's websocket: its keyed hash."},
            bases=['Model'],
        ),
    ]
