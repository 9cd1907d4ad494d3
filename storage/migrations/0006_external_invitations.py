from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0005_login_failures')]

    initial = False

    operations = [
        ops.CreateModel(
            name='PendingParticipant',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('conversation', fields.ForeignKeyField('models.Conversation', source_field='conversation_id', db_constraint=True, to_field='id', related_name='pending', on_delete=OnDelete.CASCADE)),
                ('email', fields.CharField(max_length=320)),
                ('invited_by', fields.ForeignKeyField('models.User', source_field='invited_by_id', null=True, db_constraint=True, to_field='id', related_name='pending_added', on_delete=OnDelete.SET_NULL)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'pending_participants', 'app': 'models', 'unique_together': (('conversation', 'email'),), 'indexes': [Index(fields=['email'])], 'pk_attr': 'id', 'table_description': 'An outside address named in a conversation before its owner has joined it.'},
            bases=['Model'],
        ),
        ops.AlterModelOptions(
            name='Invitation',
            options={'table': 'invitations', 'app': 'models', 'indexes': [Index(fields=['org_id', 'email']), Index(fields=['mailed_at'])], 'pk_attr': 'id', 'table_description': 'A link that lets someone join: as a member of the organisation, or as an external'},
        ),
        ops.AddField(
            model_name='Invitation',
            name='mailed_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name='Invitation',
            index=Index(fields=['mailed_at']),
        ),
    ]
