from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0010_files')]

    initial = False

    operations = [
        ops.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org_id', fields.CharField(max_length=32)),
                ('seq', fields.BigIntField()),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('actor_id', fields.CharField(null=True, max_length=32)),
                ('actor_kind', fields.CharField(max_length=16)),
                ('action', fields.CharField(max_length=48)),
                ('target_kind', fields.CharField(null=True, max_length=24)),
                ('target_id', fields.CharField(null=True, max_length=64)),
                ('patient_id', fields.CharField(null=True, max_length=32)),
                ('ip', fields.CharField(null=True, max_length=64)),
                ('user_agent', fields.CharField(null=True, max_length=300)),
                ('details', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('prev_hash', fields.CharField(max_length=64)),
                ('hash', fields.CharField(max_length=64)),
            ],
            options={'table': 'audit_log', 'app': 'models', 'unique_together': (('org_id', 'seq'),), 'indexes': [Index(fields=['org_id', 'at']), Index(fields=['org_id', 'patient_id']), Index(fields=['org_id', 'actor_id'])], 'pk_attr': 'id', 'table_description': "One entry of an organisation's audit trail: who did what to which record, from"},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='AuditHead',
            fields=[
                ('org_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('seq', fields.BigIntField()),
                ('hash', fields.CharField(max_length=64)),
            ],
            options={'table': 'audit_heads', 'app': 'models', 'pk_attr': 'org_id', 'table_description': "The last entry of an organisation's chain: appending locks this row, so entries"},
            bases=['Model'],
        ),
    ]
