from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

async def search_index(apps, schema_editor) -> None:
    """Directory search is a substring match: on PostgreSQL a trigram index serves it
    (pg_trgm is a trusted extension: the database owner may create it)."""
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        return
    await client.execute_script(
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;"
        " CREATE INDEX patients_search_trgm ON patients USING gin (search_text gin_trgm_ops);"
    )


async def drop_search_index(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        await client.execute_script("DROP INDEX IF EXISTS patients_search_trgm;")


class Migration(migrations.Migration):
    dependencies = [('models', '0006_external_invitations')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Job',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org', fields.ForeignKeyField('models.Org', source_field='org_id', db_constraint=True, to_field='id', related_name='jobs', on_delete=OnDelete.CASCADE)),
                ('created_by', fields.ForeignKeyField('models.User', source_field='created_by_id', null=True, db_constraint=True, to_field='id', related_name='jobs', on_delete=OnDelete.SET_NULL)),
                ('kind', fields.CharField(max_length=32)),
                ('status', fields.CharField(default='running', db_default='running', max_length=16)),
                ('total', fields.IntField(default=0, db_default=0)),
                ('done', fields.IntField(default=0, db_default=0)),
                ('created', fields.IntField(default=0, db_default=0)),
                ('updated', fields.IntField(default=0, db_default=0)),
                ('rejected', fields.IntField(default=0, db_default=0)),
                ('errors', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('message', fields.CharField(null=True, max_length=500)),
                ('idempotency_key', fields.CharField(null=True, max_length=200)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'jobs', 'app': 'models', 'unique_together': (('org', 'idempotency_key'),), 'pk_attr': 'id', 'table_description': 'A background job (a patient import), its progress and its report.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Patient',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org', fields.ForeignKeyField('models.Org', source_field='org_id', db_constraint=True, to_field='id', related_name='patients', on_delete=OnDelete.CASCADE)),
                ('first_name', fields.CharField(null=True, max_length=200)),
                ('last_name', fields.CharField(null=True, max_length=200)),
                ('dob', fields.DateField(null=True)),
                ('mrn', fields.CharField(null=True, max_length=64)),
                ('email', fields.CharField(null=True, max_length=320)),
                ('phone', fields.CharField(null=True, max_length=20)),
                ('unverified', fields.BooleanField(default=False, db_default=False)),
                ('archived_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('search_text', fields.TextField(default='', unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'patients', 'app': 'models', 'unique_together': (('org', 'mrn'),), 'indexes': [Index(fields=['org_id', 'phone']), Index(fields=['org_id', 'email'])], 'pk_attr': 'id', 'table_description': 'A patient of the organisation. Its id is also the id of its `users` row (kind'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='PhoneNumber',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org', fields.ForeignKeyField('models.Org', source_field='org_id', db_constraint=True, to_field='id', related_name='phone_numbers', on_delete=OnDelete.CASCADE)),
                ('team', fields.ForeignKeyField('models.Team', source_field='team_id', db_constraint=True, to_field='id', related_name='phone_numbers', on_delete=OnDelete.RESTRICT)),
                ('number', fields.CharField(unique=True, max_length=20)),
                ('provider_sid', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'phone_numbers', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A number the organisation owns (bought through Twilio), given to exactly one team.'},
            bases=['Model'],
        ),
        ops.RunPython(search_index, drop_search_index),
    ]
